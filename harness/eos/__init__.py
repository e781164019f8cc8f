"""EOS-decision methods of "Less is More" (Yue et al., ACL 2024): Selective EOS Supervision (a training
loss), Scoring EOS Supervision (a data score and filter), LLaVA-style conversation data for any adapter
family, and (in `halluc-bench-convert-lora`) conversion of LoRA adapters saved by the original LLaVA
codebase to transformers' `LlavaForConditionalGeneration` names.

Scripts: `halluc-bench-train-eos`, `halluc-bench-score-eos`, `halluc-bench-convert-lora`.
"""
from harness.eos.scoring import eos_scores, keep_mask, score_dataset
from harness.eos.selective_loss import IGNORE_INDEX, selective_eos_logits, selective_eos_loss, standard_lm_loss

__all__ = ["IGNORE_INDEX", "eos_scores", "keep_mask", "score_dataset", "selective_eos_logits",
           "selective_eos_loss", "standard_lm_loss"]
