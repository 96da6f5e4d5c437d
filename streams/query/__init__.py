"""The query layer: report SQL over the rollups (exact for any range) and ``spendstream report``."""
