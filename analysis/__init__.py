"""Results -> pandas tables, matplotlib charts, history, regression verdicts."""
