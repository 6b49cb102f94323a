"""Attribution methods, framework-free: each asks an adapter for gradients and does its own arithmetic."""
