//! The strict local TMC gateway (in progress).
