//! Admin HTTP endpoint (placeholder; being written).
