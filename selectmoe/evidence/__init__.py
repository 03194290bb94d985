"""Evidence: statistics, the summary, diagnostics, the cost ledger, the report."""
