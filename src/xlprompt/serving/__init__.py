"""Serving trained prompts: many runs on one frozen backbone (`PromptBank`), mixed per row in one forward
pass, and an HTTP service over it (`xlprompt serve`, `serving.app`; needs the `serve` extra)."""
from .multi import Prediction, PromptBank, ServedRun

__all__ = ["PromptBank", "Prediction", "ServedRun"]
