"""LLM rephrasing (WRAP / Nemotron-CC): the ``rephrase`` operator (:mod:`.op`), its backends —
local transformers, OpenAI-compatible HTTP, vLLM — (:mod:`.backends`), and the prompts, styles and
sentence-bound chunking it uses (:mod:`.prompts`)."""
