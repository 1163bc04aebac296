"""Helpers the page scripts share: cached reads of the store (`cached`) and how values are shown (`display`).

A package, not modules in `pages/`: Streamlit would list a `.py` file there as a page.
"""
