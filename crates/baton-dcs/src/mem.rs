//! (filled in by the DCS work)
