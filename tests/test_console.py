"""rcnn_cli.console: rich tables written to a log keep their rows whole."""

from __future__ import annotations


def test_a_table_in_a_log_keeps_each_row_on_one_line(capsys, monkeypatch, caplog):
    """Off a terminal rich folds a table at 80 columns; the load report's rows and its long
    source path stay whole."""
    from rcnn_cli.modeling.load_report import CATEGORIES, LoadReport

    monkeypatch.delenv("COLUMNS", raising=False)
    source = "/data/" + "pretrained-detector-weights/" * 4 + "model_final.pth"
    with caplog.at_level("INFO", logger="rcnn_cli"):
        LoadReport(source, "state dict", source, None).log_table()
    lines = capsys.readouterr().err.splitlines()
    for name, meaning in CATEGORIES.items():
        assert any(line.count("│") == 5 and name in line and meaning in line for line in lines)
    assert f"model.weights={source} (state dict)" in caplog.messages
