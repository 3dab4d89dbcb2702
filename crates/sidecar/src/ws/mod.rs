//! WebSocket client
