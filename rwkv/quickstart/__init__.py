"""The quickstart (`make quickstart`): arithmetic Q&A generated in the repo, preload, CPU training of a
small x070, export, and exact-match evaluation on held-out problems."""
