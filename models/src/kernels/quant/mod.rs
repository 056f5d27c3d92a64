//! Block-quantized weights for the CPU ([`blocks`]: 8-bit and 4-bit blocks of 32 with their
//! scales, and 8-bit activation rows) and their products with activation rows
//! ([`product`]), which read each weight once for a group of rows.

pub(crate) mod blocks;
pub(crate) mod product;

pub use blocks::{BlockFormat, BlockMatrix, QuantizedRows, BLOCK};
