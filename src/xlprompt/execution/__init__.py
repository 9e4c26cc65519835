"""How a run executes: the machine it is on (machine.py) and the plan resolved for it (plan.py)."""
from .machine import LayerShape, cpu_identity, cpu_kind, machine_speeds, native_bf16
from .plan import ExecutionPlan, RECIPES, Recipe, check_device, cpu_choice, resolve

__all__ = ["ExecutionPlan", "check_device", "LayerShape", "RECIPES", "Recipe", "cpu_choice", "cpu_identity", "cpu_kind",
           "machine_speeds", "native_bf16", "resolve"]
