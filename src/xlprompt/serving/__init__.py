"""Serving trained prompts: many runs on one frozen backbone (`PromptBank`), mixed per row in one forward
pass, and an HTTP service over it (`xlprompt serve`, `serving.app`; needs the `serve` extra)."""
from .multi import PromptBank
from .served import Prediction, ServedRun

__all__ = ["PromptBank", "Prediction", "ServedRun"]
