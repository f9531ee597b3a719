"""qbc's quantization implementation (subject ``qbc``): plain integer tensors, explicit qparams."""
