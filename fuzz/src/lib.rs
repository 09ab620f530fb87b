//! The fuzz targets are in `fuzz_targets/`; the properties they check live in each crate's
//! `fuzzing` module (feature `fuzzing`), shared with the crates' proptest smoke tests.
