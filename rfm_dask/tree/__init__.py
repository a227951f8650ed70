"""A tree of leaf RFMs (DESIGN section 8): supervised splits, and an exact RFM fitted in each bounded leaf."""
