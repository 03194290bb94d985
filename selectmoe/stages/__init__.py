"""The workflow's compute stages: warmup, scoring, finetune, evaluation, LESS, RDS+."""
