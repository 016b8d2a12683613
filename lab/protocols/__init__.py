"""Protocol pieces maillab writes itself: reply codes, address handling, and sans-IO cores."""
