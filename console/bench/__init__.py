"""`fedloom bench`: reproducible figures (tables + JSON). Kept out of `protocol/`, which has no clocks."""
