//! The CPU kernels over f32 slices: no burn types here.

pub mod exp;
pub mod flash;
pub mod matmul;
pub mod rope;
pub mod rows;
pub mod transpose;
