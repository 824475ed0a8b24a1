"""A throwaway backend that tests/test_registry.py registers through $INFERSWEEP_BACKENDS: the steps of the
backends package docstring, followed with no change to runner/ or analysis/."""
