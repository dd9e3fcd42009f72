"""Training the matcher: data builder (dataset, teacher, evidence), SFT with LoRA (sft), RL with GRPO
(rl, rewards, judge). torch and the Hugging Face stack are imported inside functions only."""
