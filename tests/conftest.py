"""Session-wide pytest hooks."""


def pytest_terminal_summary(terminalreporter, config):
    cases = getattr(config, "fuzz_cases", None)  # set by tests/test_reliability_fuzz.py
    if cases:
        terminalreporter.write_line("fuzz cases tried: " + ", ".join(f"{k} {v}" for k, v in sorted(cases.items())))
