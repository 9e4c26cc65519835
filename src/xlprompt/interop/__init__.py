"""Interoperability with other prompt-tuning libraries (Hugging Face PEFT)."""
from .peft import ExportReport, export_peft
from .peft_import import ImportReport, import_peft

__all__ = ["ExportReport", "ImportReport", "export_peft", "import_peft"]
