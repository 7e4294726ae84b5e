"""Task accuracy: lm-evaluation-harness runs on the engine and on the reference (harness), gated statistically
(gate)."""
