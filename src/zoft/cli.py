"""zoft command line (grows with the pipeline issues)."""
import sys
def main(argv=None) -> int:
    return 0
