from tinyshot.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 1
    out = capsys.readouterr().out
    assert "bench" in out
