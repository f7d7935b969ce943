import pytest
from crusoe_exporter_uptime.parser import parse_uptime


def test_parses_real_format() -> None:
    assert parse_uptime("350735.47 234388.90\n") == 350735.47


@pytest.mark.parametrize("text", ["", "12", "a b", "-1 2", "nan 1", "1 2 3"])
def test_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_uptime(text)
