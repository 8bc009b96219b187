//! Criterion benchmark of the PROXY header parser against `ppp` and `proxy-header` (being written).
fn main() {}
