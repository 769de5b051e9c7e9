"""`msmall bench`: load an OpenAI endpoint, time it right, and score tool calls and images."""
