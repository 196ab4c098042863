//! gsm8k plugin (in progress).
