"""Framework adapters for RAIN: ``rain_integrations.langchain`` (``pip install "rain-align[langchain]"``)
and ``rain_integrations.llamaindex`` (``[llamaindex]``). Each is imported on its own, so one framework
never needs the other. What they share, written once:

- ``options``: the options of every ``from_*`` constructor (one description: signatures, docs, checks);
- ``_build``: building an adapter from those options (the model, a judge or guard model, the decoder);
- ``_decoding``: one decode as events, blocking or async, over a ``Decoder``'s ``stream``/``astream``
  (``RainDecoder`` or a baseline of ``rain_core.baselines``);
- ``_tools``: tool rendering, tool-call parsing and the holdback of call syntax in streams.

docs/integrations.md describes both adapters."""
