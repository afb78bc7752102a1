mod common;
fn main() { common::run("cuda_kernels", vec![]) }
