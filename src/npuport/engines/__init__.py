"""The engine under test (vLLM, `smoke` + serve check) and the transformers reference (`baseline`)."""
