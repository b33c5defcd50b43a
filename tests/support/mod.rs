pub mod lin;
