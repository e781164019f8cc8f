"""Diagnosis of single answers: per-token attention / relevancy maps, logit lens, and an HTML report."""
from harness.diagnosis.logit_lens import logit_lens
from harness.diagnosis.maps import Trace, View, attention_map, layer_indices, trace_answer

__all__ = ["Trace", "View", "attention_map", "layer_indices", "logit_lens", "trace_answer"]
