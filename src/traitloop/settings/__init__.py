"""How each setting makes a cycle's training data and its eval prompts. sft.py: SFT on an instruct model."""
