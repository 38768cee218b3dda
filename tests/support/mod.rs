pub mod mock_api;
