"""End-to-end tests of the fleet-repo verbs: validate, plan, release."""
