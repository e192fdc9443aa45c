"""How the stages run: errors, devices, processes (torchrun), threads, progress, checkpoints, safe
writes and the one lock. Every other wing builds on this one; it builds on nothing of ours."""
