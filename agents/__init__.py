"""The DUMA agent: a fast mind that talks and a slow mind that thinks with tools."""
