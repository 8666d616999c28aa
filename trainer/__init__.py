"""What we learn: datasets, SFT then DPO, evaluation, the promotion gate and the schedule."""
