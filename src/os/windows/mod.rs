//! Windows: CreateProcessW on a connection, the SCM, the Event Log.
//! (Being written: the Windows build does not compile yet.)
