"""The Select-MoE model: config, modeling, quality losses, conversion from OLMoE."""
