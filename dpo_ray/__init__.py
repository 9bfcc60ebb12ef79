"""dpo-ray: distributed DPO on Ray."""
