pub mod mock_api;
pub mod real_flow;
