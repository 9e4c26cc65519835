"""The first run is quiet in logs: transformers' "Loading weights" bar only on a terminal."""
from transformers.utils import logging as hf_logging

from xlprompt.models.backbone import Backbone


def test_loading_weights_bar_stays_out_of_non_terminal_logs(tiny_model_dir, capsys):
    assert hf_logging.is_progress_bar_enabled()
    folder = str(tiny_model_dir("bert"))  # saving it may print its own bar
    capsys.readouterr()
    Backbone.load(folder)  # capsys: stderr is not a terminal
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err
    assert hf_logging.is_progress_bar_enabled()  # the user's setting is back afterwards


def test_the_bar_would_be_there_without_the_guard(tiny_model_dir, capsys, monkeypatch):
    """The check above can fail: with the bar allowed, loading the same model prints it."""
    import xlprompt.models.backbone as backbone

    folder = str(tiny_model_dir("bert"))
    capsys.readouterr()
    monkeypatch.setattr(backbone.sys.stderr, "isatty", lambda: True, raising=False)
    Backbone.load(folder)
    assert "Loading weights" in capsys.readouterr().err
