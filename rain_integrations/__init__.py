"""Framework adapters for RAIN: ``rain_integrations.langchain`` (``pip install "rain-align[langchain]"``)
and ``rain_integrations.llamaindex`` (``[llamaindex]``). Each is imported on its own, so one framework
never needs the other. What they share, written once, is in ``_common`` (decoders, decode events,
the sync->async bridge that cancels a decode whose caller went away) and ``_tools`` (tool rendering
and tool-call parsing); docs/integrations.md describes both."""
