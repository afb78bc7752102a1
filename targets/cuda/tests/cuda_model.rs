mod common;
fn main() { common::run("cuda_model", vec![]) }
