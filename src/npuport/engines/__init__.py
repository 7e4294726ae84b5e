"""The engine under test (vLLM, `smoke` + serve check) and the transformers reference (`baseline`).

records.py      what both stages share: the ``Runner`` interface, prompt/generation records, documents
vllm_runner.py  ``VllmRunner``: vLLM's offline engine behind that interface
hf_runner.py    ``HfRunner``: transformers' greedy loop behind the same interface
smoke.py        the `smoke` stage (VllmRunner, then serve_check.py's `vllm serve` check)
baseline.py     the `baseline` stage (HfRunner)
"""
